"""The data path as stages: plan, calibrate, fit, fine-tune, write; and the jobs built from them."""
