"""SparseImplantLib: Qt-free core of the SparseImplant 3D Slicer extension.

Data flows one way: mask + geometry (volume, io) -> sparse tensor (sparse) -> network (models)
-> completed mask and implant (postprocess) -> meshes and distance maps (geometry) -> files,
preview (render) or an MRML scene (mrml).
"""

__version__ = "0.1.0"
