"""The Textual monitor. Only this package imports textual."""
