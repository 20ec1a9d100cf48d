"""QSM and SWI from raw multi-echo GRE magnitude and phase (plain functions; Pydra tasks in ``tasks``).

Chain: ``bids`` (read ``*_echo-N_part-mag|phase_MEGRE.nii.gz`` and their sidecars) -> ``phase``
(scale to radians, Laplacian unwrapping) -> ``field`` (multi-echo weighted fit with the phase
offset removed -> field in Hz and ppm) -> ``mask`` (brain mask from the magnitude, or the user's)
-> ``background`` (V-SHARP) -> ``inversion`` (TV-ADMM, TKD fallback; B0 from the affine) ->
``swi`` (CLEAR-SWI-like multi-echo SWI, optional minIP). ``pipeline.reconstruct`` runs the chain
on arrays.
"""
