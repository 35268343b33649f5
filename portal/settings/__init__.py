"""Settings split: base (shared), development (embedded default), production, test."""
