"""Classification heads trained on cached features (see the head-trainer issue)."""
