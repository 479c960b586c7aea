"""Where a gate is, when it moves: the GPS receiver on a bus."""
