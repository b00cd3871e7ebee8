from ojs_amqp.cli import main

raise SystemExit(main())
