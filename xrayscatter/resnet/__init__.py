"""The supervised network: a multi-label ResNet-50 on single-channel detector images.

``model`` (the network), ``data`` (its tf.data input pipelines), ``features`` (15-crop and plain
features, graph code), ``callbacks`` (validation AP and TensorBoard figures during ``fit``),
``report`` (the hold-out AP report), ``export`` (the SavedModel's signatures and metadata) and
``task`` (:class:`~xrayscatter.resnet.task.ResNetTask`: what :func:`xrayscatter.train.train` runs).
"""
