"""Masks to what a person looks at and prints: surfaces (``from_masks``), mesh operations and files
(``meshes``), closed display meshes (``display_meshes``), signed distances (``distances``), the lab's
implant report (``implant_report``), and the offscreen preview (``render``), which shares its colour
map and camera (``view_style``) with the Slicer scene."""
