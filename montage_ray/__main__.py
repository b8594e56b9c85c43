import sys

from montage_ray._cli import main

sys.exit(main())
