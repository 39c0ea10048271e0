"""Scaling out: strategies and cluster detection (``strategy``), the custom multi-worker training loop
(``loop``), the backup both training routes share (``backup``) and the tf.data service (``data_service``).

Nothing here knows which network it trains: the loop runs any task of :mod:`xrayscatter.base_task`.
"""
