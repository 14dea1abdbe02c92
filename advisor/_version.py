"""The package version, on the ground floor: every module may import it without importing the
package's public API (``advisor/__init__.py``), so no import runs back up the house."""

__version__ = "0.1.0"
