"""Who may pull what: client authentication, tokens, htpasswd, access rules."""
