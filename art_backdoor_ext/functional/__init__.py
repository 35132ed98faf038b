"""Pure, typed math used by the attacks and defences: numpy/scipy only, no models, no I/O."""
