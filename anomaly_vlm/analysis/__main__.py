"""``python -m anomaly_vlm.analysis <name>... --scale tiny|published [--report]``."""

from anomaly_vlm.analysis.run import main

raise SystemExit(main())
