"""OMS v2 route modules, one per API area; each exports `router` (see ferry.api.app for how they mount)."""
