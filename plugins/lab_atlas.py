"""Example plugin: a lab's own atlas files as an atlas provider, registered as ``lab``.

Labs often keep one template and one label image for all their studies (for example their
FSL installation's MNI152 and Harvard-Oxford). This provider wires such a folder in once, so
studies only say ``"options": {"atlas": "lab"}``. The folder (``CSTBATCH_LAB_ATLAS``) holds:

    template.nii.gz   MNI-space template (FA-like contrast registers best to subject FA)
    labels.nii.gz     integer label image in the same space
    labels.json       {"brainstem": [ids], "motor_left": [ids], "motor_right": [ids]}

The heavy lifting (resampling labels onto the template grid, splitting left/right at x = 0,
checks) is the built-in ``custom`` provider's; this plugin only supplies its options.
"""
import json
import os
from pathlib import Path

from cstbatch.errors import OptionError
from cstbatch.hookspecs import hookimpl
from cstbatch.steps.atlas import custom_atlas

FOLDER_ENV = "CSTBATCH_LAB_ATLAS"


def lab_atlas(options):
    folder = os.environ.get(FOLDER_ENV)
    if not folder:
        raise OptionError(f"atlas 'lab': set {FOLDER_ENV} to the folder holding the lab's atlas files")
    folder = Path(folder)
    try:
        ids = json.loads((folder / "labels.json").read_text())
    except (OSError, ValueError) as exc:
        raise OptionError(f"{folder / 'labels.json'}: cannot read label ids ({exc})") from None
    return custom_atlas({**options, "atlas_template": str(folder / "template.nii.gz"),
                         "atlas_labels": str(folder / "labels.nii.gz"),
                         "atlas_brainstem_ids": ids.get("brainstem"),
                         "atlas_motor_left_ids": ids.get("motor_left"),
                         "atlas_motor_right_ids": ids.get("motor_right")})


@hookimpl
def register_atlases(register):
    register("lab", lab_atlas, version="1", description=f"the lab's atlas files in ${FOLDER_ENV}")
