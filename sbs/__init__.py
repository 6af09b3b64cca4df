"""sbs: Distilling Step-by-Step (Hsieh et al., ACL 2023 Findings) on Ray.

Teacher stage (Ray Data) -> multi-task student training (Ray Train + DeepSpeed) -> label-only
serving (Ray Serve). See README.md.
"""

__version__ = "0.1.0"
