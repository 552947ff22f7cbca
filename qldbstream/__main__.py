from qldbstream.cli import main

raise SystemExit(main())
