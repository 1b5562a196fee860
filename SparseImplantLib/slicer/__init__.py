"""The Slicer side, without Qt: what the module's widget and logic call.

``scene_input`` turns the user's segment or CT volume into a mask; ``designer`` exports it, starts
``sparseimplant generate`` in a subprocess (``job``) and loads the results back through
``scene_results`` into the three linked views of ``scene_views``; ``run_controller`` holds the panel's
Generate / Cancel / results state; ``panel`` and ``requirements`` hold the panel's other decisions.
Everything here runs in plain Python on slicer-core, so it is tested without a GUI.
"""
