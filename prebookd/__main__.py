from prebookd.cli.main import main

raise SystemExit(main())
