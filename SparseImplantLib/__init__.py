"""SparseImplantLib: Qt-free core of the SparseImplant 3D Slicer extension.

Data flows one way, and the folders follow it:

    pipeline/   mask file -> ``io`` (``refusals``) -> ``volume.Volume`` -> ``pose`` (canonical, straightened
                grid) -> ``priors`` (mirror image, fitted mean skull) -> ``inference`` (``sparse`` tensor ->
                ``models`` network, ``superres``) -> completed mask -> ``postprocess`` (the implant)
                -> ``doubts``; ``generate`` runs one skull end to end, ``predict`` a folder of them
    surfaces/   masks -> surfaces (``from_masks``, ``display_meshes``, ``meshes``) -> signed distances
                (``distances``), the lab's report (``implant_report``), the preview (``render``)
    outputs     files written atomically, a run's results moved in as one set
    slicer/     the Slicer side: the user's nodes in (``scene_input``), a ``generate`` subprocess
                (``designer``, ``job``), results into the scene (``scene_results``, ``scene_views``)

Beside the flow: ``sparse`` (the convolution engine), ``models`` (networks, weights registry),
``metrics`` and ``evaluate`` (DSC, border DSC, HD95 against ground truth), ``data`` (data sets,
synthetic defects), ``train``, ``bench``, and ``cli`` (the ``sparseimplant`` command). Shared by all:
``errors`` (one user-facing error type), ``progress`` (one progress-event type), ``contract`` (the
names of the files a run writes).
"""

__version__ = "0.1.0"
