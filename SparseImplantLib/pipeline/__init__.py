"""The pipeline, stage by stage in the order data flows: a defective skull mask in, the completed
skull and the implant out.

``io`` reads the mask (``refusals`` turns away inputs it cannot use) into a ``volume.Volume``;
``pose`` lays the network's grid along the skull; ``priors`` mirrors the skull and fits the mean
skull; ``inference`` (with ``superres``) runs the networks; ``postprocess`` cuts the implant;
``doubts`` says when a result deserves a second look. ``generate`` runs the stages end to end and
hands the masks to ``..surfaces`` for meshes, distances, the report and the preview.
"""
