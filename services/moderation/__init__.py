"""The moderation service: owns detectors and their actions (stateless: the tenant policy comes from auth)."""
