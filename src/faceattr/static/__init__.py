"""The page `faceattr serve` shows (plain HTML + JS, no build step)."""
