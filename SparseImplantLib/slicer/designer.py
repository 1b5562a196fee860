"""What the "Generate Implant" button does, without Qt: scene inputs -> subprocess -> scene results.

``SparseImplantLogic`` in the Slicer module delegates here, so the whole flow (export the selected
segment, run ``sparseimplant generate`` in a subprocess, load the results) is tested in CI on a
``slicer-core`` scene. Each run works in its own new folder; the input nodes are only read.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

from ..errors import SparseImplantError
from ..pipeline.io import write_volume
from ..pipeline.refusals import check_skull_mask
from . import scene_results
from .job import GenerateJob, GenerateRequest
from .scene_input import segment_to_volume, volume_from_node
from .scene_views import three_view_nodes

LIBRARY_PARENT = Path(__file__).resolve().parents[1]  # folder holding SparseImplantLib (module dir in Slicer)


@dataclass
class DesignInputs:
    """The user's choices: a skull segment, or a CT volume with a bone threshold."""

    segmentation_node: object = None
    segment_id: str = ""
    ct_volume_node: object = None
    threshold_hu: float = 300.0
    reference_segmentation_node: object = None
    reference_segment_id: str = ""
    model: Optional[str] = None
    device: str = "auto"
    refine: bool = True  # super-resolution refinement when the registry has a model for it
    straighten: bool = True  # level the scan's bottom cut and turn the head to face forward first (False: as it lies)
    method: str = "auto"  # how the skull is completed (contract.METHODS)

    @property
    def from_segment(self) -> bool:
        """Whether the run reads the chosen segment; it wins over the CT volume, which the panel may keep selected."""
        return self.segmentation_node is not None and bool(self.segment_id)

    @property
    def source_node(self) -> object:
        """The node the run reads (the segment's segmentation, else the CT volume; None if neither)."""
        return self.segmentation_node if self.from_segment else self.ct_volume_node


def design_inputs(parameters, devices: Mapping[str, str], methods: Optional[Mapping[str, str]] = None) -> DesignInputs:
    """The module's parameter node (or anything with its attribute names) as ``DesignInputs``;
    ``devices`` and ``methods`` map the panel's device and design choices to the CLI's
    (``SparseImplant.DEVICES``, ``SparseImplant.METHODS``; without ``methods``, auto). A segmentation
    counts only with a segment chosen in it."""
    return DesignInputs(
        segmentation_node=parameters.inputSegmentation if parameters.inputSegmentId else None,
        segment_id=parameters.inputSegmentId,
        ct_volume_node=parameters.inputVolume,
        threshold_hu=parameters.boneThreshold,
        reference_segmentation_node=parameters.referenceSegmentation if parameters.referenceSegmentId else None,
        reference_segment_id=parameters.referenceSegmentId,
        model=parameters.model or None,
        device=devices[parameters.device],
        refine=parameters.refine,
        straighten=parameters.straighten,
        method=methods[parameters.method] if methods else "auto",
    )


class ImplantDesigner:
    """Prepares inputs from the scene, starts the subprocess and loads its results back.

    ``environment`` is what the worker starts from: inside Slicer, the environment Slicer itself was
    started with (``slicer.util.startupEnvironment()``), since PythonSlicer's launcher adds Slicer's
    own paths again and would otherwise find them twice."""

    def __init__(self, scene, python: str = sys.executable, work_root: Optional[Path] = None,
                 model_dir: Optional[Path] = None, environment: Optional[Mapping[str, str]] = None) -> None:
        self.scene = scene
        self.python = python
        self.work_root = Path(work_root) if work_root else Path(tempfile.gettempdir()) / "SparseImplant"
        self.model_dir = model_dir
        self.environment = environment

    def prepare(self, inputs: DesignInputs) -> GenerateRequest:
        """Write the input (and reference) masks into a fresh work folder; nothing in the scene changes."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        # Dated like slicer.util.tempDirectory's folders, so a folder left by a crash tells when it was made.
        work = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=self.work_root))
        try:
            threshold = None
            if inputs.from_segment:
                skull = segment_to_volume(inputs.segmentation_node, inputs.segment_id)
                check_skull_mask(skull, f"segment '{inputs.segment_id}'")
            elif inputs.ct_volume_node is not None:
                skull = volume_from_node(inputs.ct_volume_node)
                threshold = inputs.threshold_hu
            else:
                raise SparseImplantError("no input selected: choose the defective skull segment or a CT volume")
            input_path = write_volume(work / "input.nrrd", skull)
            reference_path = None
            if inputs.reference_segmentation_node is not None and inputs.reference_segment_id:
                reference = segment_to_volume(inputs.reference_segmentation_node, inputs.reference_segment_id,
                                                   reference=skull)
                reference_path = write_volume(work / "reference.nrrd", reference)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return GenerateRequest(input_path, work / "output", model=inputs.model, device=inputs.device,
                               threshold_hu=threshold, reference=reference_path, model_dir=self.model_dir,
                               refine=inputs.refine, straighten=inputs.straighten, method=inputs.method)

    def worker_environment(self) -> Dict[str, str]:
        env = dict(os.environ if self.environment is None else self.environment)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIBRARY_PARENT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive while the job runs
        # Slicer itself and other programs share the cores: spinning OpenMP threads then starve each
        # other while they wait for a busy core (README, Troubleshooting).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def start(self, request: GenerateRequest) -> GenerateJob:
        """Start the worker; if it cannot start, the run's work folder is removed and the cause raised."""
        try:
            return GenerateJob(request.command(self.python), env=self.worker_environment())
        except OSError as error:
            self.discard(request)
            raise SparseImplantError(f"cannot start the worker '{self.python}' ({error.strerror or error}): "
                                     "reinstall 3D Slicer or check that PythonSlicer is beside Slicer") from error

    @staticmethod
    def report(request: GenerateRequest) -> Optional[dict]:
        """The finished run's report.json, read once: pass it on to ``load``; None if it wrote none."""
        return scene_results.read_report(request.output_dir)

    def load(self, request: GenerateRequest, name: str, inputs: Optional[DesignInputs] = None,
             report: Optional[dict] = None) -> scene_results.ResultNodes:
        """Add the finished run's results to the scene under a new, unique name. With ``inputs``, the
        results are filed with the node the run read (its study; a CT becomes the segmentation's reference
        geometry: ``scene_results.place_with_input``) and the input and reference nodes are kept out of
        the three views, which show the results alone. ``report``: the run's report.json as ``report``
        read it (read here if not given)."""
        result = scene_results.add_results_from_folder(self.scene, request.output_dir, name=name, report=report)
        if inputs is not None:
            views = three_view_nodes(self.scene)
            for node in (inputs.segmentation_node, inputs.reference_segmentation_node, inputs.ct_volume_node):
                if node is not None:
                    scene_results.keep_out_of_views(node, views)
            if inputs.source_node is not None:
                scene_results.place_with_input(result, inputs.source_node)
        return result

    @staticmethod
    def discard(request: GenerateRequest) -> None:
        """Remove a run's work folder (after loading, cancelling or failing)."""
        shutil.rmtree(Path(request.input_path).parent, ignore_errors=True)
