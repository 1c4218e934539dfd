"""The toy world: ``toyworld`` (the renderer: a figure from keypoints and a look), ``looks`` (what a
prompt and the nuisances name, the backgrounds), ``motions`` (random, held-out and jumping-jack
poses, training examples), ``toy_metrics`` (its measures with known answers), ``batches`` and
``train_toy`` (training its model: ``python -m toy.train_toy``)."""
