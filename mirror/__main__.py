from mirror.cli.main import main

raise SystemExit(main())
