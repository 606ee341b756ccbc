import sys

from zai_proxy.cli import main

sys.exit(main())
