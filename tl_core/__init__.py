"""tl-retrain: an Airflow-scheduled retraining service for transfer learning on PyTorch.

`tl_core` is the product; it never imports Airflow. Every step runs as `tl <step>` too.
"""

__version__ = "0.1.0"
