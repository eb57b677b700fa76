"""The dashboard's panes, one module each; every pane renders part of one FleetSnapshot."""
