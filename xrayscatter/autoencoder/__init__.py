"""The unsupervised network: a convolutional patch autoencoder and its spatial-pyramid features.

``model`` (encoder, decoder, the dense-grid encoding), ``patches`` (where the images come from and
the tf.data pipelines of random patches), ``spm`` (the spatial pyramid, graph code), ``report`` (the
reconstruction error and the paper's Figs. 6 and 7), ``export`` (the SavedModel's signatures and
metadata) and ``task`` (:class:`~xrayscatter.autoencoder.task.AutoencoderTask`: what
:func:`xrayscatter.train.train` runs).
"""
