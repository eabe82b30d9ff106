"""One module per subcommand; :mod:`abiguard.cli` registers them and runs ``main()``."""
