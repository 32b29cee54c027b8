"""Launch wscfer_node on a ROS 2 install (``ros2 launch wscfer_ros wscfer.launch.py``).

Arguments:
  image           the camera's image topic (``<image>/compressed`` with
                  ``input: compressed`` in the params file)
  params_file     the node's parameters (default: the installed config/wscfer.yaml)
  namespace       namespace of the node and its topics
  fastdds_profile Fast DDS profile with a shared-memory transport sized for
                  camera frames (default: the installed config/fastdds_shm.xml)
  start_camera    also start wscfer_camera publishing on ``image`` (for machines
                  without a camera driver)
  camera_source   its source: webcam index, video, image, folder or 'astronaut'
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "wscfer_ros"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    image_topic = LaunchConfiguration("image")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="image",
                              description="image topic the node subscribes to"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "wscfer.yaml"]),
                              description="parameters of wscfer_node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=PathJoinSubstitution(
                                  [share, "config", "fastdds_shm.xml"]),
                              description="Fast DDS profile (FASTDDS_DEFAULT_PROFILES_FILE)"),
        DeclareLaunchArgument("start_camera", default_value="false",
                              description="also start wscfer_camera publishing on image"),
        DeclareLaunchArgument("camera_source", default_value="0",
                              description="wscfer_camera's source (webcam index, video, image, "
                                          "folder or 'astronaut')"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                               LaunchConfiguration("fastdds_profile")),
        Node(
            package=PACKAGE,
            executable="wscfer_camera",
            namespace=namespace,
            parameters=[{"source": LaunchConfiguration("camera_source")}],
            remappings=[("image", image_topic)],
            condition=IfCondition(LaunchConfiguration("start_camera")),
            output="screen",
        ),
        Node(
            package=PACKAGE,
            executable="wscfer_node",
            name="wscfer_node",
            namespace=namespace,
            parameters=[LaunchConfiguration("params_file")],
            remappings=[("image", image_topic),
                        ("image/compressed", [image_topic, "/compressed"])],
            output="screen",
        ),
    ])
