"""SparseImplantLib: Qt-free core of the SparseImplant 3D Slicer extension.

Data flows one way: mask + geometry (volume, io) -> canonical, straightened grid (pose, inference)
-> priors (priors) -> sparse tensor (sparse) -> network (models, inference) -> completed mask and
implant (postprocess), doubts (checks) -> meshes, distance maps and the lab's report (geometry,
display_meshes, distances, implant_report) -> files, preview (render) or an MRML scene (mrml);
``pipeline`` runs it end to end.
"""

__version__ = "0.1.0"
