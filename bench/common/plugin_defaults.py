"""The plugin's own defaults the bench waits on, read from its settings model so they cannot
drift from what the process does."""

from qaic_device_plugin.config.settings import Settings

# The periodic rescan: the live run's sysfs-only signals wait for it, and the side-by-side run
# waits past the first tick before it measures idle CPU.
RESYNC_SECONDS = float(Settings.model_fields["resync_seconds"].default)
