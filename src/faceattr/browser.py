"""Debian's headless Chromium, started the one way the browser tests and the screenshot tools
use (through Playwright, which is a test extra: imported by the caller, not here)."""

CHROMIUM = "/usr/bin/chromium"
# Headless as root, and quiet on a closed network: without the background-networking flags
# Chromium keeps trying Google's services and floods the log with refused connections.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def launch(playwright, executable: str = CHROMIUM):
    """A Playwright Browser on Debian's chromium (never a downloaded one)."""
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
