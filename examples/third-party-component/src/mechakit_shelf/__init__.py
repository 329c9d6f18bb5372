"""An example third-party mechakit plug-in: ``state.shelf``, a state store in one JSON file."""
