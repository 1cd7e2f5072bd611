"""Servers and the GPU they share: engines and their launch plans, the server processes, the
embedded model, and each sharing mode's settings (MPS daemons, MIG profiles and instances,
MIG-like caps), with the registry that keeps any process gpushare started from outliving it."""
