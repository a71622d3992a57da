"""Training and evaluation of the ``pet_tumour`` network on synthetic PET/CT phantoms.

``python -m dicom_node.training.pet_tumour train --bundle DIR [--minutes M]`` and
``... evaluate --bundle DIR`` (held-out seeds, network against the SUV 2.5, 40% SUVmax and PERCIST-style
baselines; writes ``docs/metrics.json`` and the card).
"""
