"""Network definitions (U-Nets, Res-MTNet, FPR3D, boosted trees) and model bundle loading."""
