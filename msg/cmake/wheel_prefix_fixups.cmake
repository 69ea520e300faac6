# Fix-ups for building interface packages against ROS 2 from PyPI wheels.
#
# The wheels' exported `*__rosidl_generator_py` targets carry the Python and NumPy include
# directories of the machine that built them (/opt/python/...). Point them at this machine's.
# A no-op in a regular ROS 2 installation, where those directories exist.
function(llmi3d_fix_wheel_python_targets)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
  get_directory_property(_targets IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    if(_target MATCHES "__rosidl_generator_py$")
      get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
      set(_stale FALSE)
      foreach(_dir IN LISTS _dirs)
        if(NOT EXISTS "${_dir}")
          set(_stale TRUE)
        endif()
      endforeach()
      if(_stale)
        set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
          "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
      endif()
    endif()
  endforeach()
endfunction()
