"""The rules that judge a fleet: check, drift, the drafts discovery writes. Pure."""
