import sys

from kd_tf.cli import main

sys.exit(main())
