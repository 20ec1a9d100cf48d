"""Nipype 1 interfaces for DEEPMIR's main steps, so nipype pipelines can reuse them one by one.

>>> from nipype import Node, Workflow
>>> from workflows.nipype_interfaces import Preprocess, Segment, ExtractLesions
>>> seg = Node(Segment(), name="segment")

``Segment`` and ``ExtractLesions`` call the same plain function as the Pydra task of the same step;
``Preprocess`` runs the one preprocessing graph (:func:`workflows.preprocess.preprocess_subject`),
which is why the interfaces live beside the workflows. Each writes into the node's working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from deepmir_tasks.settings import RunSettings
from workflows.preprocess import preprocess_subject

_DEFAULTS = RunSettings()


class _PreprocessInputSpec(BaseInterfaceInputSpec):
    t2_file = File(exists=True, mandatory=True, desc="T2-weighted image")
    swi_file = File(exists=True, mandatory=True, desc="SWI (magnitude-based) image")
    qsm_file = File(exists=True, mandatory=True, desc="QSM (susceptibility, ppm) image")
    mask_file = File(exists=True, desc="optional brain mask in the T2w's space")
    voxel_size = traits.Float(_DEFAULTS.voxel_size, usedefault=True, desc="working grid voxel size (mm)")
    qsm_units = traits.Enum("auto", "ppm", "ppb", usedefault=True,
                            desc="auto: a QSM not in ppm fails; ppm: trust the values; ppb: divide by 1000")
    allow_resolution = traits.Bool(_DEFAULTS.allow_resolution, usedefault=True,
                                   desc="run voxel sizes outside the supported range instead of failing")


class _PreprocessOutputSpec(TraitedSpec):
    t2 = File(exists=True, desc="T2w in the working grid, robust z-score")
    swi = File(exists=True, desc="SWI in the working grid, robust z-score")
    qsm = File(exists=True, desc="QSM in the working grid, ppm")
    mask = File(exists=True, desc="brain mask in the working grid")
    swi_to_t2 = File(exists=True, desc="SWI -> T2w rigid transform (ANTs)")
    t2_to_mni = File(exists=True, desc="T2w -> MNI affine (4x4 text, world mm)")


class Preprocess(SimpleInterface):
    """Input checks, N4, brain extraction, SWI/QSM -> T2w registration, resampling, normalisation."""

    input_spec = _PreprocessInputSpec
    output_spec = _PreprocessOutputSpec

    def _run_interface(self, runtime):
        mask = self.inputs.mask_file if self.inputs.mask_file else None
        out = preprocess_subject(self.inputs.t2_file, self.inputs.swi_file, self.inputs.qsm_file,
                                 Path(runtime.cwd), mask_file=mask, voxel_size=self.inputs.voxel_size,
                                 qsm_units=self.inputs.qsm_units, allow_resolution=self.inputs.allow_resolution)
        for name in self.output_spec().copyable_trait_names():
            self._results[name] = str(out[name])
        return runtime


class _SegmentInputSpec(BaseInterfaceInputSpec):
    t2 = File(exists=True, mandatory=True, desc="preprocessed T2w")
    swi = File(exists=True, mandatory=True, desc="preprocessed SWI")
    qsm = File(exists=True, mandatory=True, desc="preprocessed QSM")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    model_file = File(exists=True, desc="model .safetensors (default: the bundled model)")


class _SegmentOutputSpec(TraitedSpec):
    probseg_cmb = File(exists=True, desc="CMB probability map")
    probseg_iron = File(exists=True, desc="iron deposit probability map")
    dseg = File(exists=True, desc="label map: 0 background, 1 CMB, 2 iron")


class Segment(SimpleInterface):
    """DEEPMIR U-Net inference on a preprocessed subject."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        from deepmir_tasks.model import segment_subject

        model = self.inputs.model_file if self.inputs.model_file else None
        out = segment_subject(self.inputs.t2, self.inputs.swi, self.inputs.qsm, self.inputs.mask,
                              Path(runtime.cwd), model_file=model)
        for name in ("probseg_cmb", "probseg_iron", "dseg"):
            self._results[name] = str(out[name])
        return runtime


class _ExtractInputSpec(BaseInterfaceInputSpec):
    probseg_cmb = File(exists=True, mandatory=True)
    probseg_iron = File(exists=True, mandatory=True)
    dseg = File(exists=True, mandatory=True)
    qsm = File(exists=True, mandatory=True)
    swi = File(exists=True, mandatory=True)
    mask = File(exists=True)
    t2_to_mni = File(exists=True, desc="T2w -> MNI affine, for the MARS region column")
    participant_id = traits.Str(mandatory=True, desc="label without 'sub-'")
    session_id = traits.Str("", usedefault=True)
    model = File(exists=True, desc="model whose record's lesion rules apply (default: the bundled model)")
    threshold = traits.Float(desc="voxel probability threshold (default: the model's)")


class _ExtractOutputSpec(TraitedSpec):
    lesions = File(exists=True, desc="per-lesion TSV")
    dseg = File(exists=True, desc="label map of the kept lesions (1 CMB, 2 iron)")
    lesions_json = File(exists=True, desc="column descriptions")
    dropped = File(exists=True, desc="candidates dropped as mimics, with the reason")
    summary = File(exists=True, desc="per-subject summary TSV")


class ExtractLesions(SimpleInterface):
    """Per-lesion table (location, size, probability, QSM, MARS region) from DEEPMIR's maps."""

    input_spec = _ExtractInputSpec
    output_spec = _ExtractOutputSpec

    def _run_interface(self, runtime):
        from deepmir_tasks.lesions import extract_lesions_files
        from deepmir_tasks.model.modelfile import model_lesion_rules

        i = self.inputs
        rules = model_lesion_rules(i.model if isdefined(i.model) else None)
        out = extract_lesions_files(
            i.probseg_cmb, i.probseg_iron, i.dseg, i.qsm, i.swi, i.mask if i.mask else None,
            Path(runtime.cwd), participant_id=i.participant_id, session_id=i.session_id or None,
            t2_to_mni=i.t2_to_mni if i.t2_to_mni else None,
            rules=rules.with_threshold(i.threshold if isdefined(i.threshold) else None))
        for name in ("lesions", "lesions_json", "dropped", "summary", "dseg"):
            self._results[name] = os.fspath(out[name])
        return runtime
