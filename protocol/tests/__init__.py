# Package, so that these test modules import as protocol.tests.* and never clash by file name with other folders' tests.
