"""Triangle meshes as VTK polydata (no Qt): coordinate transforms, triangle arrays, the checks a
printable mesh must pass, and mesh files.

These are the plain mesh operations the rest stands on: ``from_masks`` builds surfaces from masks with
them, ``display_meshes`` lightens surfaces for viewing, ``distances`` measures between surfaces, and
the pipeline, the Slicer module and the tests write and read meshes through ``export_mesh`` and
``read_mesh``. Nothing here knows about masks or voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkFeatureEdges, vtkMassProperties, vtkReverseSense, vtkTriangleFilter
from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter
from vtkmodules.vtkIOCore import vtkWriter
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkOBJWriter, vtkSTLReader, vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter
from vtkmodules.vtkIOPLY import vtkPLYReader, vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter

from ..errors import SparseImplantError
from ..outputs import PathLike, atomic_write
from ..pipeline.volume import LPS_TO_RAS

COORDINATE_SYSTEMS = ("LPS", "RAS")


def vtk_matrix(values: np.ndarray) -> vtkMatrix4x4:
    """A 4x4 numpy matrix as VTK's."""
    matrix = vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(values[row, column]))
    return matrix


def image_data(array: np.ndarray, image: Optional[vtkImageData] = None) -> vtkImageData:
    """A voxel array indexed (i, j, k) as VTK image scalars (i fastest, as VTK stores them), in ``image``
    (a subclass such as Slicer's oriented image) or a new ``vtkImageData``; geometry is the caller's."""
    image = vtkImageData() if image is None else image
    image.SetDimensions(*array.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ravel(array, order="F"), deep=True))
    return image


def transform_polydata(surface: vtkPolyData, matrix: np.ndarray) -> vtkPolyData:
    """Apply a 4x4 matrix to the points; cell order is reversed for mirroring matrices so that
    normals keep pointing outwards."""
    transform = vtkTransform()
    transform.SetMatrix(vtk_matrix(matrix))
    mapper = vtkTransformPolyDataFilter()
    mapper.SetTransform(transform)
    mapper.SetInputData(surface)
    mapper.Update()
    output = mapper.GetOutput()
    if np.linalg.det(matrix[:3, :3]) < 0:
        reverse = vtkReverseSense()
        reverse.SetInputData(output)
        reverse.ReverseCellsOn()
        reverse.ReverseNormalsOn()
        reverse.Update()
        output = reverse.GetOutput()
    result = vtkPolyData()
    result.DeepCopy(output)
    return result


def triangle_cells(triangles: np.ndarray) -> vtkCellArray:
    """VTK's cells for an (n, 3) array of point ids."""
    polys = vtkCellArray()
    polys.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64), deep=True),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles, dtype=np.int64).reshape(-1), deep=True))
    return polys


def has_area(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per triangle: whether its corners span an area (sine of its widest angle above 1e-6; float32
    resolves that with room to spare, at half the memory of float64 on a skull's millions)."""
    points = points.astype(np.float32, copy=False)
    corner = np.take(points, triangles[:, 0], axis=0)  # np.take: rows gathered faster than by indexing
    first = np.take(points, triangles[:, 1], axis=0) - corner
    second = np.take(points, triangles[:, 2], axis=0) - corner
    third = second - first
    cross = np.cross(first, second)
    longest = np.maximum.reduce([np.einsum("ij,ij->i", edge, edge) for edge in (first, second, third)])
    return np.einsum("ij,ij->i", cross, cross) > (1e-6 * longest) ** 2


def without_zero_area_triangles(surface: vtkPolyData) -> vtkPolyData:
    """``surface`` as triangles only, without those whose corners lie on one line (they cover no area:
    their edges are their neighbours' edges, so distances to the surface do not change). A surface of
    triangles with none such (the usual case) is returned as it is."""
    offsets = vtk_to_numpy(surface.GetPolys().GetOffsetsArray()) if surface.GetNumberOfPolys() else np.zeros(1)
    only_triangles = (surface.GetNumberOfCells() == surface.GetNumberOfPolys() and len(offsets) > 1
                      and bool((np.diff(offsets) == 3).all()))
    if not only_triangles:
        triangulate = vtkTriangleFilter()
        triangulate.SetInputData(surface)
        triangulate.PassVertsOff()
        triangulate.PassLinesOff()
        triangulate.Update()
        surface = triangulate.GetOutput()
    if surface.GetNumberOfCells() == 0:
        return surface
    triangles = vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    keep = has_area(vtk_to_numpy(surface.GetPoints().GetData()), triangles)
    if keep.all():
        return surface
    result = vtkPolyData()
    result.SetPoints(surface.GetPoints())
    result.GetPointData().ShallowCopy(surface.GetPointData())
    result.SetPolys(triangle_cells(triangles[keep]))
    return result


def enclosed_volume_mm3(surface: vtkPolyData) -> float:
    triangles = vtkTriangleFilter()
    triangles.SetInputData(surface)
    properties = vtkMassProperties()
    properties.SetInputConnection(triangles.GetOutputPort())
    properties.Update()
    return float(properties.GetVolume())


def open_edge_counts(surface: vtkPolyData) -> Dict[str, int]:
    """Boundary and non-manifold edges: both 0 for a closed, manifold (printable) surface."""
    counts = {}
    for name in ("boundary", "non_manifold"):
        edges = vtkFeatureEdges()
        edges.SetInputData(surface)
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.SetBoundaryEdges(name == "boundary")
        edges.SetNonManifoldEdges(name == "non_manifold")
        edges.Update()
        counts[name] = edges.GetOutput().GetNumberOfCells()
    return counts


def _writer(suffix: str) -> vtkWriter:
    if suffix == ".stl":
        writer = vtkSTLWriter()
        writer.SetFileTypeToBinary()
    elif suffix == ".obj":
        writer = vtkOBJWriter()
    elif suffix == ".ply":
        writer = vtkPLYWriter()
        writer.SetFileTypeToBinary()
    elif suffix == ".vtk":
        writer = vtkPolyDataWriter()
        writer.SetFileTypeToBinary()
    elif suffix == ".vtp":  # VTK's XML format, zlib-compressed: point arrays at a fraction of legacy .vtk's size
        writer = vtkXMLPolyDataWriter()
        writer.SetDataModeToAppended()
        writer.EncodeAppendedDataOff()
        writer.SetCompressorTypeToZLib()
        writer.SetCompressionLevel(1)  # zlib's fastest: half the time of its default, 2 % larger (sample)
        writer.SetIdTypeToInt32()
    else:
        raise SparseImplantError(f"cannot export meshes as '{suffix}': use .stl, .obj, .ply, .vtk or .vtp")
    return writer


def export_mesh(surface: vtkPolyData, path: PathLike, coordinates: str = "LPS") -> Path:
    """Write an LPS surface as STL/OBJ/PLY/VTK/VTP (by extension) in LPS or RAS millimetres, atomically.

    Only .vtk and .vtp keep point arrays such as the signed distance."""
    if coordinates not in COORDINATE_SYSTEMS:
        raise SparseImplantError(f"unknown coordinate system '{coordinates}': use LPS or RAS")
    path = Path(path)
    writer = _writer(path.suffix.lower())
    output = transform_polydata(surface, LPS_TO_RAS) if coordinates == "RAS" else surface
    if path.suffix.lower() == ".stl":
        triangles = vtkTriangleFilter()
        triangles.SetInputData(output)
        triangles.Update()
        output = triangles.GetOutput()

    def write(temporary: Path) -> None:
        writer.SetFileName(str(temporary))
        writer.SetInputData(output)
        if not writer.Write():
            raise SparseImplantError(f"could not write '{path}': check free disk space and permissions")

    return atomic_write(path, write)


def read_mesh(path: PathLike) -> vtkPolyData:
    """Read a mesh written by ``export_mesh`` (for tests and round trips)."""
    readers = {".stl": vtkSTLReader, ".obj": vtkOBJReader, ".ply": vtkPLYReader, ".vtk": vtkPolyDataReader,
               ".vtp": vtkXMLPolyDataReader}
    suffix = Path(path).suffix.lower()
    if suffix not in readers:
        raise SparseImplantError(f"cannot read meshes of type '{suffix}'")
    reader = readers[suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()
