"""What ``atjt report`` is made of, reading run files only (no torch): ``runs`` reads run and
compare directories and derives the per-group statistics, ``plots`` draws the figures (each
returns the data it drew), ``markdown`` writes report.md. The command is atjt_dist.commands.report."""
