// RemoveDirectoryTree (common/directory_tree.h): removes nested trees,
// removes symbolic links without following them, and treats a missing path
// as done.
#include "common/formats/directory_tree.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

namespace fs = std::filesystem;

TEST(DirectoryTreeTest, RemovesNestedTreesButNotLinkTargets) {
  const fs::path base = fs::path(::testing::TempDir()) /
                        ("lockstep_tree_" + std::to_string(::getpid()));
  const fs::path tree = base / "tree";
  const fs::path outside = base / "outside";
  fs::create_directories(tree / "a" / "b" / "c");
  fs::create_directories(outside);
  std::ofstream(tree / "a" / "f.txt") << "x";
  std::ofstream(tree / "a" / "b" / "c" / "g.bin") << "y";
  std::ofstream(outside / "keep.txt") << "z";
  fs::create_directory_symlink(outside, tree / "a" / "link");
  ASSERT_TRUE(RemoveDirectoryTree(tree.string()).ok());
  EXPECT_FALSE(fs::exists(tree));
  EXPECT_TRUE(fs::exists(outside / "keep.txt")) << "followed a symbolic link";
  // Missing: nothing to do. A plain file: removed.
  EXPECT_TRUE(RemoveDirectoryTree(tree.string()).ok());
  ASSERT_TRUE(RemoveDirectoryTree((outside / "keep.txt").string()).ok());
  EXPECT_FALSE(fs::exists(outside / "keep.txt"));
  ASSERT_TRUE(RemoveDirectoryTree(base.string()).ok());
  EXPECT_FALSE(fs::exists(base));
}

}  // namespace
}  // namespace lockstep::common
