"""Results and record streams, without torch: what inference yields (`results`), paths as text
(`pathtext`), classify's records on stdout (`stream`) and embed's manifest records (`manifest`)."""
