"""Training: the actor, the step, the run loop, teachers and distillation wiring."""
