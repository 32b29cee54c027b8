"""What a ROS install relies on and this machine cannot run: launch file, package.xml, configs.

The launch file is compiled and read (launch and launch_ros are not on PyPI);
where they are installed, it is also built by them. What it names must exist
and be installed.
"""
import ast
import fnmatch
import importlib
import importlib.util
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

from wscfer_ros import resources

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO_ROOT / "launch" / "wscfer.launch.py"
PARAMS_FILE = REPO_ROOT / "config" / "wscfer.yaml"
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_shm.xml"
# Third-party imports of the runtime -> their rosdep keys in package.xml.
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "tqdm": "python3-tqdm",
               "skimage": "python3-skimage"}
# Imports without a rosdep key: package.xml must name them for pip.
PIP_ONLY = {"mediapipe", "onnxruntime"}
# ROS packages whose Python module has the package's name.
ROS_PACKAGES = {"rclpy", "rcl_interfaces", "lifecycle_msgs", "sensor_msgs", "std_msgs",
                "diagnostic_msgs", "ament_index_python", "hri_msgs"}


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == name]


def keyword(call: ast.Call, name: str, constants: dict | None = None):
    """The value of a keyword argument given as a literal or a module constant's name."""
    for argument in call.keywords:
        if argument.arg == name:
            if isinstance(argument.value, ast.Name):
                return (constants or {})[argument.value.id]
            return ast.literal_eval(argument.value)
    return None


def module_constants(tree: ast.Module) -> dict:
    return {target.id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets}


@pytest.fixture(scope="module")
def launch_tree() -> ast.Module:
    source = LAUNCH_FILE.read_text()
    compile(source, str(LAUNCH_FILE), "exec")
    return ast.parse(source)


@pytest.fixture(scope="module")
def setup_tree() -> ast.Module:
    return ast.parse((REPO_ROOT / "setup.py").read_text())


@pytest.fixture(scope="module")
def console_scripts(setup_tree) -> dict[str, str]:
    """name -> "module:function" of setup.py's console_scripts."""
    (setup_call,) = calls(setup_tree, "setup")
    scripts = keyword(setup_call, "entry_points")["console_scripts"]
    return dict(map(str.strip, script.split("=")) for script in scripts)


@pytest.fixture(scope="module")
def installed_patterns(setup_tree) -> list[str]:
    """The glob patterns of setup.py's data_files (what colcon installs to share/)."""
    return [ast.literal_eval(call.args[0]) for call in calls(setup_tree, "glob")]


def test_launch_file_executables_are_console_scripts(launch_tree, console_scripts):
    constants = module_constants(launch_tree)
    nodes = calls(launch_tree, "Node")
    assert {keyword(node, "package", constants) for node in nodes} == {"wscfer_ros"}
    executables = {keyword(node, "executable") for node in nodes}
    assert executables == {"wscfer_node", "wscfer_camera"}
    for executable in executables:
        module, function = console_scripts[executable].split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_launch_file_node_name_matches_the_params_file(launch_tree):
    names = {keyword(node, "name") for node in calls(launch_tree, "Node")
             if keyword(node, "executable") == "wscfer_node"}
    (params_key,) = yaml.safe_load(PARAMS_FILE.read_text())
    assert names == {params_key.removeprefix("/**/")}


def test_launch_file_names_installed_config_files(launch_tree, installed_patterns):
    named = []
    for call in calls(launch_tree, "PathJoinSubstitution"):
        parts = [element.value for element in call.args[0].elts
                 if isinstance(element, ast.Constant)]
        named.append("/".join(parts))
    assert sorted(named) == ["config/fastdds_shm.xml", "config/wscfer.yaml"]
    for relative in named + ["launch/wscfer.launch.py"]:
        assert (REPO_ROOT / relative).is_file(), relative
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in installed_patterns), \
            f"{relative} is not installed by setup.py's data_files"


def test_launch_file_arguments(launch_tree):
    def first_arguments(name):
        return {ast.literal_eval(call.args[0]) for call in calls(launch_tree, name)}

    declared = first_arguments("DeclareLaunchArgument")
    used = first_arguments("LaunchConfiguration")
    assert {"image", "params_file", "namespace", "fastdds_profile"} <= declared
    assert used == declared, "every argument declared is used, and only those"


def test_the_launch_description_builds_with_ros_launch():
    """On a ROS install: ROS's launch builds the description, with the nodes and arguments read above."""
    # launch.actions, not launch: this checkout's launch/ folder imports as an empty namespace package.
    pytest.importorskip("launch.actions", reason="ROS 2's launch is not installed (not on PyPI): "
                                                 "the tests above read the launch file instead")
    launch_ros_actions = pytest.importorskip("launch_ros.actions", reason="ROS 2's launch_ros is not installed")
    spec = importlib.util.spec_from_file_location("wscfer_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    description = module.generate_launch_description()

    arguments = {argument.name for argument in description.get_launch_arguments()}
    assert arguments == {"image", "params_file", "namespace", "fastdds_profile", "start_camera", "camera_source"}
    nodes = [entity for entity in description.entities if isinstance(entity, launch_ros_actions.Node)]
    assert {node.node_package for node in nodes} == {"wscfer_ros"}
    assert sorted(node.node_executable for node in nodes) == ["wscfer_camera", "wscfer_node"]


def test_launch_file_sets_the_fastdds_profile(launch_tree):
    (setter,) = calls(launch_tree, "SetEnvironmentVariable")
    assert ast.literal_eval(setter.args[0]) == "FASTDDS_DEFAULT_PROFILES_FILE"


def test_node_parameters_match_the_params_file():
    from wscfer_ros.node import PARAMETERS

    (node_name, section), = yaml.safe_load(PARAMS_FILE.read_text()).items()
    in_file = section["ros__parameters"]

    assert node_name == "/**/wscfer_node"
    assert set(in_file) == set(PARAMETERS)
    for name, (default, description) in PARAMETERS.items():
        # same type too: ROS refuses 0 for a double parameter
        assert (type(in_file[name]), in_file[name]) == (type(default), default), name
        assert description


def runtime_imports() -> set[str]:
    """Top-level names of the third-party modules that wscfer_ros imports."""
    names = set()
    for path in (REPO_ROOT / "wscfer_ros").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"wscfer_ros"}


def test_package_xml_lists_every_dependency(setup_tree):
    text = (REPO_ROOT / "package.xml").read_text()
    package = ElementTree.fromstring(text)
    assert package.get("format") == "3"
    assert package.findtext("name") == "wscfer_ros"
    assert package.findtext("export/build_type") == "ament_python"
    (setup_call,) = calls(setup_tree, "setup")
    version = keyword(setup_call, "version")
    assert package.findtext("version") == version
    dependencies = {element.text for element in package.iter()
                    if element.tag in ("depend", "exec_depend")}

    imported = runtime_imports()
    unknown = imported - set(ROSDEP_KEYS) - PIP_ONLY - ROS_PACKAGES
    assert not unknown, f"add {unknown} to this test's maps and to package.xml"
    for module in imported:
        if module in PIP_ONLY:
            assert module in text, f"package.xml should say to pip install {module}"
        else:
            assert ROSDEP_KEYS.get(module, module) in dependencies, module
    assert {"rmw_fastrtps_cpp", "launch", "launch_ros"} <= dependencies


def test_fastdds_profile_gives_shared_memory_room_for_camera_frames():
    namespace = {"dds": "http://www.eprosima.com"}
    profiles = ElementTree.parse(FASTDDS_PROFILE).getroot().find("dds:profiles", namespace)
    transports = {descriptor.findtext("dds:transport_id", namespaces=namespace): descriptor
                  for descriptor in profiles.iterfind("dds:transport_descriptors/"
                                                      "dds:transport_descriptor", namespace)}
    (participant,) = profiles.iterfind("dds:participant", namespace)
    rtps = participant.find("dds:rtps", namespace)

    assert participant.get("is_default_profile") == "true"
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=namespace) == "false"
    used = [element.text for element in rtps.iterfind("dds:userTransports/dds:transport_id",
                                                      namespace)]
    types = {transports[transport_id].findtext("dds:type", namespaces=namespace)
             for transport_id in used}
    assert types == {"SHM", "UDPv4"}
    shm = next(transports[t] for t in used
               if transports[t].findtext("dds:type", namespaces=namespace) == "SHM")
    segment_bytes = int(shm.findtext("dds:segment_size", namespaces=namespace))
    assert segment_bytes >= 1920 * 1080 * 3, "a full-HD bgr8 frame fits in one segment"


def test_share_files_are_found_in_this_checkout():
    assert resources.params_file() == PARAMS_FILE
    assert resources.fastdds_profile() == FASTDDS_PROFILE
    with pytest.raises(FileNotFoundError, match=r"config/missing.yaml of wscfer_ros not found"):
        resources.share_file("config/missing.yaml")
